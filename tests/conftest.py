import os

from hypothesis import settings

# CI runs on 2 shared cores: few examples there, more on a developer's machine.
settings.register_profile("ci", max_examples=10, deadline=None)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))
