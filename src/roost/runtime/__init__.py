"""The runtime: admission, session lanes, the hot-session cache, run channels, lifecycle."""
