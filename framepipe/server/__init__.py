"""The manager process, its pipeline workers, and the TCP / HTTP / WebRTC front ends."""
