"""The Teams app package (manifest, icons, zip), built by `python app.py manifest build`."""

from manifest.build import MANIFEST_VERSION, build_package, render_manifest, teams_app_id

__all__ = ["MANIFEST_VERSION", "build_package", "render_manifest", "teams_app_id"]
