"""The networks a pipeline calls, by role: torch modules with one signature per role, ONNX Runtime
sessions, and the runners that give a pipeline either behind the same components interface.
"""
