// OpenSlide (Debian: libopenslide-dev), found through pkg-config.
#include <openslide.h>
