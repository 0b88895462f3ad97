from triton_inpaint.triton.preprocess import TritonPythonModel  # noqa: F401
