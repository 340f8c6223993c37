// Debian builds libxml2 with ICU; its headers then pull in ICU's, which clash with Foundation's bundled ICU
// in any Swift module that sees both. stanzad never touches ICU-specific fields (only pointers to encoders),
// so the ICU parts of the headers are left out.
#include <libxml/xmlversion.h>
#undef LIBXML_ICU_ENABLED
#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/xmlerror.h>
