from lms.cli.main import main

main()
