"""The data plane: shared memory, rings, queues, sources, processing, sinks. No sockets, no asyncio."""
