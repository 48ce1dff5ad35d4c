"""pianoray: staged elimination of piano-performance evaluation encoders on Ray.

Layering (imports only point down): cli -> protocol -> training -> models/objectives -> data.
Only ``pianoray.protocol`` and ``pianoray.cli`` import ray.
"""

__version__ = "0.1.0"
