"""The names of a node's processes, one home: the plan asks for them, the supervisor and
systemd run them, node operations drain and restart them."""

ENVOY = "envoy"
MODEL_SERVER = "model_server"
MINIO = "minio"  # the model_repo node's model store
