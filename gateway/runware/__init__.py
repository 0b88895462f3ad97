"""The hosted Runware API's protocol: its task types, ``POST /v1``, the WebSocket, and its async
tasks (deliveryMethod "async", getResponse).
"""
