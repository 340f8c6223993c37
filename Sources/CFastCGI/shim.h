#include <fcgiapp.h>
#include <fcgi_config.h>
