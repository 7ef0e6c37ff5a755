"""The numba cache directory of the package: keyed by what compiled code depends on."""
import importlib.util

from gpu_negsample import compile_cache


def test_a_copy_of_the_package_under_another_name_gets_its_own_cache_directory():
    # numba's cache entries name their module; a copy imported as another package (an A/B
    # copy of an older version) sharing the directory would be served entries it cannot load.
    spec = importlib.util.spec_from_file_location("gpu_negsample_copy.compile_cache", compile_cache.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.PACKAGE_DIR == compile_cache.PACKAGE_DIR
    assert copy.package_digest() != compile_cache.package_digest()
