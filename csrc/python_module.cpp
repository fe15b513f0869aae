// Makes tna_kernels._C importable as a Python module; loading it runs the op registrations.
#include <Python.h>

extern "C" PyObject* PyInit__C_legacy(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_legacy", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
