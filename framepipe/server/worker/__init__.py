"""A pipeline worker process (:mod:`.process`), the manager's handle on one (:mod:`.handle`),
and the messages between them (:mod:`.messages`)."""
