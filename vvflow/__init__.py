"""vvflow: a watch-folder orchestrator for video-AI pipelines.

The directory layout under the storage root is the state: a video is pending,
processing, completed or failed according to the folder it sits in.
"""

__version__ = "0.1.0"
