"""Generates the protobuf modules in this folder from its `.proto` files.

    python proto/generate.py          # rewrite the *_pb2.py files
    python proto/generate.py --check  # exit 1 if a committed *_pb2.py differs from what protoc makes

Needs grpcio-tools<=1.80 (its protoc writes code for protobuf 6.x, which tritonclient also needs).
Only message modules are generated; the gRPC service is registered by daemon/grpc_frontend.py.
"""
import pathlib
import re
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["model_config.proto", "grpc_service.proto", "health.proto"]


def generated() -> dict[str, str]:
    """Module file name -> text, as naiad imports them: package-relative and in naiad's own pool."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={out}",
                        *SOURCES], check=True)
        texts = {}
        for path in sorted(pathlib.Path(out).glob("*_pb2.py")):
            text = path.read_text()
            text = text.replace("_descriptor_pool.Default()", "_naiad_pool")
            text = text.replace("from google.protobuf import descriptor_pool as _descriptor_pool\n",
                                "from naiad.proto import POOL as _naiad_pool\n")
            text = re.sub(r"^import (\w+_pb2) as", r"from naiad.proto import \1 as", text, flags=re.M)
            texts[path.name] = text
        return texts


def main() -> int:
    texts = generated()
    if "--check" in sys.argv:
        stale = [name for name, text in texts.items()
                 if not (HERE / name).exists() or (HERE / name).read_text() != text]
        if stale:
            print(f"stale generated modules: {', '.join(stale)}; run `python proto/generate.py`")
            return 1
        return 0
    for name, text in texts.items():
        (HERE / name).write_text(text)
        print(f"wrote proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
