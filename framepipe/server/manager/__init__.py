"""The manager process: the pipeline table (no I/O), admission and policy, the asyncio driver,
the shared decoders, the TCP front end, metrics, and the reaper it leaves behind."""
