"""framepipe on Ray: a node agent per Ray node runs a whole single-machine manager there, and
one front end speaks the stream manager's protocol and routes each pipeline to its node.

Frames never travel through Ray: a pipeline's decoder, ring, inference service and result
buffer stay on one node, in that node's shared memory. Ray carries control (the front end
reaches each agent's manager as a client, like the HTTP gateway does), placement (from Ray's
view of the nodes) and failure detection (Ray's node health checks). See docs/CLUSTER.md.

Modules: :mod:`.settings` (the front end's settings and the health-check configuration
framepipe ships), :mod:`.agent` (the node agent actor), :mod:`.placement` (which node takes a
pipeline; no I/O), :mod:`.reservations` (each pipeline's camera slot held in Ray's scheduler),
:mod:`.store` (pipeline records in Ray's GCS key-value store),
:mod:`.front` (the routing command handler), :mod:`.app` (``framepipe serve --backend ray``).
"""
