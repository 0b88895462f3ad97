"""What a request's denoising loop does step by step, shared by every family: the job the in-flight
batcher advances, step caching, soft inpainting."""
