"""Third-party packages made in a test: modules plus the `.dist-info` that declares their entry
points, unpacked as pip would install them. Putting the directory on the module path
installs the package (importlib.metadata finds its entry points there)."""

from __future__ import annotations

from pathlib import Path


def install_package(directory: Path, name: str, modules: dict[str, str],
                    entry_points: dict[str, dict[str, str]], version: str = "0.1.0") -> Path:
    """`modules`: module name -> source; `entry_points`: group -> {name: "module:attr"}.
    Returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (directory / f"{module}.py").write_text(source)
    info = directory / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items())
        for group, points in entry_points.items()))
    return directory
