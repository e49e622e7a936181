"""The relay on Trio: listeners and admission (``server``), one session's two pumps and
timers (``session``), and the command gate where filters decide (``gate``).  The session
moves bytes; filters decide."""
