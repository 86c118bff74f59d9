"""Peer servers the inference benchmark compares Ferry with, on the same weights and photo.

They run in their own virtualenv (``make bench-peers`` creates ``.venv-mlserver``), so nothing
here may import Ferry's server code: ``model`` rebuilds the model and its preprocessing alone.
"""
