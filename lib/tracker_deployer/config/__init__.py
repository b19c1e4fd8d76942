"""Environment configs: the domain values and the one parser that builds them."""

from tracker_deployer.config.load import env_path, load_env, parse_env, parse_env_text
from tracker_deployer.config.model import Env

__all__ = ["Env", "env_path", "load_env", "parse_env", "parse_env_text"]
