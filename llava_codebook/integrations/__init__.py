"""Integrations with evaluation tools: an lmms-eval model plugin (`lmms_eval_plugin`, `lmms_eval_model`) and the
per-request visual-token and FLOPs accounting they and `llava-codebook profile` share (`accounting`)."""
