"""An inference service process, one per model (:mod:`.process`), the manager's supervisor of
them (:mod:`.supervisor`), the workers' client of one (:mod:`.client`), and their messages."""
