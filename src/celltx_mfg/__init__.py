"""celltx-mfg: discrete-event simulation of autologous cell-therapy manufacturing under GMP rules."""

__version__ = "0.2.0"

# The embedded batch log every command and the dashboard use when no --db is given.
DEFAULT_DB = "celltx.db"
