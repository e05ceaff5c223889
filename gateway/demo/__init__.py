"""`eldergate demo`: the daemon on simulated devices with a scripted story (run.py), the door's
part (door.py) and how its lines are shown (output.py). Never imported by the daemon's path."""
