"""Export distilled students: open_clip hub folders, ONNX encoders, model cards."""
