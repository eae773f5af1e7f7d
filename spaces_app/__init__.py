"""The Gradio Space of llava-codebook (see README.md here). `app.py` is the Space entry point."""
