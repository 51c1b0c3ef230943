"""Export writers and checks (a library layer below build): open_clip hub folders, ONNX encoders with their
preprocessing and tokenizer files, int8/fp16 variants, measurements, model cards. Which run or checkpoint to
export is the commands' business (:mod:`clipkd.commands.source`)."""
