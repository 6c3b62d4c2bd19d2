"""Mixture-of-experts compute: routing and its statistics (``routing``), the single-device grouped SwiGLU matmuls
(``grouped``) and the expert-parallel dispatch across a mesh (``expert_parallel``)."""
