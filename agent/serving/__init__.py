"""The built-in model server: TF Serving's models.config, REST API (8501) and gRPC API
(8500) on ONNX Runtime (and OpenVINO where installed), plus the choice between it and
the tensorflow_model_server binary (backend.py) and the built-in models."""
