"""The installed package: its metadata and the C++ library it wraps agree."""

from importlib.metadata import version

import gradcomm


def test_version_is_the_cmake_project_version():
    # pyproject.toml reads the version from CMakeLists.txt, and the library gets it from
    # the same project() line: a second hand-typed copy would show up here.
    assert gradcomm.__version__ == version("gradcomm")
