"""Static INT8 quantisation of a served model: calibrate, quantize, evaluate."""
