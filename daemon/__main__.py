from daemon.main import main

raise SystemExit(main())
