"""The operator's surface: settings, the command line, logs, metrics and the web views."""
