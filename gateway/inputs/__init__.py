"""Where a task's images come from: base64, data URIs, stored uploads, and URLs fetched under a policy
that refuses private addresses.
"""
