"""Routes of the lifecycle endpoints: load, unload, loaded instances (`lms ps`)."""

LOAD_PATH = "/api/v1/models/load"
UNLOAD_PATH = "/api/v1/models/unload"
INSTANCES_PATH = "/api/admin/instances"
MATCH_PATH = "/api/admin/models/match"
