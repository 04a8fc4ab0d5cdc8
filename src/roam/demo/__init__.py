"""`roam demo`: a whole roam system on loopback, without privileges.

A client with two emulated networks, a relay and a server run as processes;
an application streams through the client while wifi fails, comes back and
turns into a black hole. `units` starts the daemons and the networks,
`app` is the application, `scenario` the story, `report` what is printed.
"""

from roam.demo.scenario import run_demo

__all__ = ["run_demo"]
