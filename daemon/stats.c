/* SPDX-License-Identifier: MIT */
/* stats: storage for the daemon's counters (see stats.h). */
#include "daemon/stats.h"

struct stats stats;
