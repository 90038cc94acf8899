"""Map build/, serve/, configs/ and model_repository/ under nemo_trt/ in regular wheels.

Editable installs get nothing extra: any nemo_trt/ folder in site-packages would
shadow the editable redirect, and nemo_trt/__init__.py plus nemo_trt/resources.py
read these folders straight from the checkout instead.
"""
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MAPPING = {
    "build": "nemo_trt/build",
    "serve": "nemo_trt/serve",
    "configs": "nemo_trt/_data/configs",
    "model_repository": "nemo_trt/_data/model_repository",
    # the tiny model's CPU-reference golden: `nemo-trt selftest --gpu` compares the GPU engines with it
    "tests/golden/regress_tiny.json": "nemo_trt/_data/golden/regress_tiny.json",
}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "standard":
            build_data["force_include"].update(MAPPING)
