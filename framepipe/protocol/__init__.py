"""The wire format shared by server and client. No I/O, and no import of the rest of framepipe."""
