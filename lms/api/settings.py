"""Routes of the settings and API-key endpoints."""

CONFIG_PATH = "/api/admin/config"
KEYS_PATH = "/api/admin/keys"
