"""After the protocol: a chosen model as a self-contained artifact (``artifact``), scored on labelled data it may
never have seen (``assess``: ``pianoray evaluate``) and run on new performances (``predict``). No Ray here: an
artifact is used on a laptop without a cluster; ``pianoray.protocol.export`` writes it from a run.
"""
