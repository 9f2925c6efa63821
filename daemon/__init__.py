"""The naiad process: CLI, settings, core types, model configuration, repository, registry,
frontends. See DESIGN.md beside the repository for the architecture."""
from importlib import metadata

SERVER_NAME = "naiad"
try:
    VERSION = metadata.version("naiad")
except metadata.PackageNotFoundError:
    VERSION = "0+unknown"

# The protocol extensions naiad serves (ServerMetadata.extensions, GET /v2).
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics",
              "parameters", "logging"]

