"""Configuration of ``raylam ingest``: users' own video, LeRobot datasets and the paper's HDF5 files."""

from __future__ import annotations

from dataclasses import dataclass

from raylam.config import ConfigError, spec

SOURCES = ("video_folder", "frame_folders", "lerobot", "hdf5")


@dataclass
class LeRobotKeys:
    """Which LeRobot v3 features become frames, actions and states."""

    camera_key: str = spec("", help="a video feature of meta/info.json, e.g. observation.images.top")
    action_key: str = spec("action", help="the action feature (float vector per frame)")
    state_key: str | None = spec(None, help="a state feature (e.g. observation.state); null: no states")


@dataclass
class HDF5Keys:
    """Dataset names inside each trajectory group (the paper's files: obs, actions, states)."""

    obs_key: str = spec("obs", help="uint8 [T, H, W, 3] frames")
    action_key: str | None = spec("actions", help="float [T, A]; null: the files hold no actions")
    state_key: str | None = spec("states", help="float [T, S]; null: ignore states")


@dataclass
class IngestConfig:
    """Turn a user's episodes into the raylam WebDataset layout that collection writes."""

    source: str = spec("video_folder", choices=SOURCES,
                       help="video_folder: <path>/**/*.mp4|webm|...; frame_folders: <path>/<episode>/<frame>.jpg|png; "
                            "lerobot: LeRobot v3 dataset roots; hdf5: files in the LAOM paper's layout")
    paths: list[str] = spec([], help="local folders (video_folder, frame_folders, lerobot) or .hdf5 files; one path or a list")
    output: str = spec("data/ingested", help="local directory or URI (s3://bucket/path, gs://...)")
    task: str = spec("imported", help="a name for the data; a dm-control task (cheetah-run) lets evaluation "
                                      "roll policies out when the user asks for it")
    image_size: int = spec(64, ge=8, le=1024, help="frames are resized to image_size x image_size")
    clip_length: int = spec(64, ge=2, help="frames per WebDataset sample")
    overlap: int = spec(12, ge=0, help="frames shared by consecutive clips (>= frame_stack-1 + max offset)")
    frames_format: str = spec("mp4", choices=("mp4", "npy"), help="mp4: lossless H.264 RGB; npy: raw uint8")
    crf: int = spec(0, ge=0, le=51, help="H.264 quality of the stored clips; 0 is lossless")
    min_length: int = spec(2, ge=2, help="episodes shorter than this many frames are an error")
    actions_dir: str | None = spec(None, help="folder of action sidecars <episode>.npy|.parquet|.csv; null: "
                                              "look beside each video / inside each frame folder (actions.*)")
    action_columns: list[str] | None = spec(None, help="parquet/CSV sidecar columns holding the action; null: all")
    labeled_episodes: list[str] | None = spec(None, help="episodes whose actions may train (by id); null: "
                                                         "num_labeled of those that have actions")
    num_labeled: int | None = spec(None, ge=0, help="labeled training episodes, chosen by a seeded order among "
                                                    "those with actions; null: all of them")
    heldout_fraction: float = spec(0.1, ge=0.0, lt=1.0, help="share of episodes held out (by a hash of the "
                                                             "episode id and split_seed: stable as episodes are added)")
    min_heldout: int | None = spec(None, ge=0, help="at least this many held-out episodes (topped up in the same "
                                                    "hash order); null: 1 when heldout_fraction > 0, else 0")
    heldout_episodes: list[str] | None = spec(None, help="hold out exactly these episodes (by id); replaces "
                                                         "heldout_fraction and min_heldout")
    split_seed: int = spec(0, ge=0, help="seed of the held-out split and of the labeled order")
    max_episodes: int | None = spec(None, ge=1, help="only the first n episodes (sorted by id): a trial run")
    episodes_per_shard: int = spec(4, ge=1, help="episodes per tar shard (one shard = one Ray task)")
    num_workers: int | None = spec(None, ge=1, help="concurrent ingest tasks; null = every shard submitted at once")
    max_retries: int = spec(3, ge=0, help="Ray task retries when a worker or node dies")
    progress: bool = spec(True, help="show a progress bar")
    lerobot: LeRobotKeys = spec(LeRobotKeys(), help="source lerobot: feature keys")
    hdf5: HDF5Keys = spec(HDF5Keys(), help="source hdf5: dataset keys")

    def require_inputs(self) -> None:
        """What ``raylam ingest`` needs beyond a valid section: inputs (an experiment that only
        trains carries an empty ``ingest`` section, e.g. a sweep's exported best.yaml)."""
        if not self.paths:
            raise ConfigError(f"ingest.paths: got [], expected at least one input {'file' if self.source == 'hdf5' else 'folder'}")
        self.validate()

    def wanted_heldout(self) -> int:
        """The fewest held-out episodes this config accepts (heldout_episodes: exactly those)."""
        if self.heldout_episodes is not None:
            return len(self.heldout_episodes)
        if self.min_heldout is not None:
            return self.min_heldout
        return 1 if self.heldout_fraction > 0 else 0

    def validate(self) -> None:
        if self.overlap >= self.clip_length:
            raise ConfigError(f"overlap: got {self.overlap}, expected a value < clip_length ({self.clip_length})")
        if self.paths and self.source == "lerobot" and not self.lerobot.camera_key:
            raise ConfigError("lerobot.camera_key: missing, expected a video feature of meta/info.json "
                              "(e.g. observation.images.top)")
        if self.labeled_episodes is not None and self.num_labeled is not None:
            raise ConfigError("num_labeled and labeled_episodes: set one of them, not both")
