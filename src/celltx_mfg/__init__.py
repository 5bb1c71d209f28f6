"""celltx-mfg: discrete-event simulation of autologous cell-therapy manufacturing under GMP rules."""

__version__ = "0.1.0"
