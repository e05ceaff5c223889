"""The on-site duty console: a web page served by the daemon for the staff in the centre."""
