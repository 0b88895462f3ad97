from triton_inpaint.triton.postprocess import TritonPythonModel  # noqa: F401
