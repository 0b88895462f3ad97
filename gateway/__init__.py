"""The HTTP gateway: the reference APIs (Runware-style tasks, Eden-style async tasks) in front of Triton."""
