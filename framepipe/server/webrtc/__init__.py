"""WebRTC pipelines: a browser's camera in, annotated video and predictions out.

The ``webrtc`` command starts a pipeline whose source is a peer's video track. The worker that
runs it holds the peer connection (aiortc, in an asyncio loop of its own, on a thread):

* ``config`` — what a ``webrtc`` request asks for, typed and checked (no aiortc here: the
  manager uses it to refuse a bad offer before any process starts);
* ``outputs`` — which predictions are drawn on the returned video and which go out on the data
  channel (the reference's ``stream_output`` / ``data_output``), and the messages' shape;
* ``ice`` — which local addresses are offered as ICE candidates;
* ``jitter`` — a received video frame is decoded when its last packet arrives (aiortc waits for
  the next frame's first);
* ``tracks`` — the peer's frames into a ring slot, and the return track (a one-frame mailbox:
  the freshest annotated frame, never a backlog);
* ``session`` — the peer connection, the push source its frames go into, the pipeline that
  reads them, and the tap that draws each result and sends it back.
"""
