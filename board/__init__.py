"""Board profiles: one folder per supported board (data only, no code)."""
